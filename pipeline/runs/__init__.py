"""Run folders: a folder as the stages see it (:mod:`.folder`: paths, config, manifest, the one
writer at a time), what each stage was built from (:mod:`.provenance`), the folder's lock
(:mod:`.lock`), and what ``prepare`` checks before writing one (:mod:`.preflight`, with the
libraries every stage imports read by :mod:`.libraries`)."""
