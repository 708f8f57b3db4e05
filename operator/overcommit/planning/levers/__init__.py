"""One planner per lever, behind one interface (``base.Lever``): ``ksm``, ``uksm``, ``zswap``,
``swap`` plan kernel settings; ``balloon`` plans guests' balloon targets."""
