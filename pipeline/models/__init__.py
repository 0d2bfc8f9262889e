"""Models: margin heads over ``label_group`` (:mod:`.heads`) and the image and title encoders (:mod:`.encoders`)."""
