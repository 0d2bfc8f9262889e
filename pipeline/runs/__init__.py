"""Run folders: a folder as the stages see it (:mod:`.folder`: paths, config, manifest, the one
writer at a time), what each stage was built from (:mod:`.provenance`) and the folder's lock
(:mod:`.lock`)."""
