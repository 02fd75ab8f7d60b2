"""DPO data: chosen/rejected pairs ranked by detection reward (see ``vlm_rl.dpo.pairs``)."""
