"""vlm_rl.rewards"""
