"""vlm_rl.tracking"""
