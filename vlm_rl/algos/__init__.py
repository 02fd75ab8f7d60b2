"""vlm_rl.algos"""
