"""The claims of the dpo-eval gate: one test per claim, its family named by the claims registry."""
