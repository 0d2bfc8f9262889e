"""Models: margin heads over ``label_group`` (:mod:`.heads`), the image and title encoders
(:mod:`.encoders`) and their settings (:mod:`.config`, free of torch)."""
