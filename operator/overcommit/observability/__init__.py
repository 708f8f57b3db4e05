"""Observability of the cluster components: Prometheus metrics (``metrics``) and structured
logs (``logs``). Events are the agent's (``overcommit.agent.events``)."""
