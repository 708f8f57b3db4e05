"""Test support shared by the tests and the benchmarks, outside the product's wheel: real QEMU
guest fleets (``guests``) under a libvirtd it starts (``libvirtd``), the fake kernel and libvirt
fixtures (``fakes``), the shared policy cases (``cases``), pytest fixtures
(``pytest_plugin``), and KubeVirt stand-ins for the local cluster: a launcher image and its
guest (``launcher``), VMI CRDs, objects and launcher pods (``kubevirt``)."""
