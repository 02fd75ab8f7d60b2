"""vlm_rl.eval"""
