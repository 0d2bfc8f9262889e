"""Training: the one loop shared by both encoders (:mod:`.loop`), its checkpoint, identity and RNG
handling (:mod:`.checkpoint`), and batched embedding (:mod:`.embedding`)."""
