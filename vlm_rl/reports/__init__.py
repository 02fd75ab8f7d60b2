"""vlm_rl.reports"""
