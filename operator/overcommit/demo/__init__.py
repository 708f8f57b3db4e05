"""``overcommit demo``: the whole operator on this one machine (``run``), with the merge
workload that gives KSM something to do (``workload``)."""
