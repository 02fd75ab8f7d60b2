"""vlm_rl.learner"""
