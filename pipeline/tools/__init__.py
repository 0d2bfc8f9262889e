"""Tools around the stages: the demo (:mod:`.demo`) and the predict-path benchmark (:mod:`.bench`)."""
