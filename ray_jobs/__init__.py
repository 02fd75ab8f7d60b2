"""Thin entry points for `ray job submit`: parse config → validate → connect to Ray → run."""
