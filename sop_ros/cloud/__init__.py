"""The cloud's end of the fleet: episodes in (ingest into the store), policies out (the signed registry and
the server that announces and streams them), run by `sop cloud` alone or beside the learner."""
