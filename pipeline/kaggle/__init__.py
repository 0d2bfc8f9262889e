"""The Kaggle path: a package folder to upload (:mod:`.package`) and the internet-off inference
that runs from it (:mod:`.inference`). Neither goes through the stages: both call the library's
one predict path, :mod:`pipeline.matching.predict`."""
