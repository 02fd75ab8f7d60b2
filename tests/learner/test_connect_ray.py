"""connect_ray's private local Ray tells its own processes where its State API is, so Ray Train's
PlacementGroupCleaner does not autodetect "multiple active Ray instances" when another Ray runs on the machine
(issue 26 item 5). ray.init is a stand-in: no Ray starts."""

from __future__ import annotations

import os


def test_private_ray_pins_the_state_api_before_it_starts(monkeypatch):
    import ray

    import vlm_rl.learner.job_common as job_common
    import vlm_rl.learner.resources as resources

    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # restored after the test, absent or not
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs, env=os.environ.get("RAY_API_SERVER_ADDRESS"))

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "nodes", lambda: [])
    monkeypatch.setattr(resources, "cluster_capacity", lambda: resources.Capacity({"CPU": 8.0}, autoscaling=False))
    job_common.connect_ray(1)
    assert seen["address"] == "local" and seen["dashboard_host"] == "127.0.0.1"
    # the raylet and its workers inherit this environment: they ask their own dashboard, not autodetection
    assert seen["env"] == f"http://127.0.0.1:{seen['dashboard_port']}"


def test_a_cluster_to_join_is_pinned_through_the_runtime_env(monkeypatch):
    import ray

    import vlm_rl.learner.job_common as job_common
    import vlm_rl.learner.resources as resources

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(ray, "nodes", lambda: [])
    monkeypatch.setattr(resources, "cluster_capacity", lambda: resources.Capacity({"CPU": 8.0}, autoscaling=False))
    job_common.connect_ray(1)
    # the run's workers get the address: no autodetection among several Ray instances on the machine
    assert seen == {"address": "10.0.0.1:6379", "logging_level": "WARNING",
                    "runtime_env": {"env_vars": {"RAY_ADDRESS": "10.0.0.1:6379"}}}
    assert "RAY_API_SERVER_ADDRESS" not in os.environ


def test_joined_cluster_pins_only_what_it_may(monkeypatch):
    from vlm_rl.learner.job_common import pin_state_api_to_joined_cluster as pin

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert pin("auto") == {} and pin("ray://head:10001") == {} and pin("head") == {}
    assert pin("[::1]:6379") == {"runtime_env": {"env_vars": {"RAY_ADDRESS": "[::1]:6379"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {}}')  # a `ray job submit` driver
    assert pin("10.0.0.1:6379") == {}
