"""The paper's experiments: configurations, run functions and figures."""
