"""Shared learner machinery: engines, policy forward/log-probs, checkpoints, compiled layers, Ray Train plumbing,
and the supervised loop that SFT and DPO share."""
