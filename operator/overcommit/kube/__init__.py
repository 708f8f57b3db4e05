"""Kubernetes I/O shared by the agent and the controller: the REST client (``client``), resource
paths (``resources``), list+watch caches (``informer``), leader election (``lease``), Events
(``events``), the probe endpoints (``probes``) and the API's clock (``clock``). Neither component
imports the other; both import this."""
