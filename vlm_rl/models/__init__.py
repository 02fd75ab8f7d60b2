"""vlm_rl.models"""
