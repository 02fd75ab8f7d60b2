"""vlm_rl.rollout"""
