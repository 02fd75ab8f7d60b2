"""vlm_rl.data"""
