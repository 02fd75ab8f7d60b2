"""DPO: pairs built from ranked rollouts and loaded for the learners, the DPO learner step and job driver."""
