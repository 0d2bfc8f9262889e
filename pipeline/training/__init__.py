"""Training: the one loop shared by both encoders (:mod:`.loop`), what a run is set up from
(:mod:`.session`, settings in :mod:`.config`), its checkpoint, identity and RNG handling
(:mod:`.checkpoint`) and its per-epoch progress line (:mod:`.progress`)."""
