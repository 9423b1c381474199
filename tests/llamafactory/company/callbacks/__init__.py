"""The company packages the LLaMA-Factory reference document names (``callbacks.company``...).

Each name maps to a real implementation: ACME's monitor, Slack notifier and detailed
logger from examples/company (neutral callbridge callbacks, which POST to real servers).
"""
