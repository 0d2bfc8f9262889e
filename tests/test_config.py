import pytest

from pipeline.config import Config, ConfigError, dump_config, from_dict, load_config


def test_defaults_and_overrides():
    cfg = load_config(None, ["text.train.epochs=3", "match.k=30", "modalities=[text,tfidf]", "image.head.margin_rad=0.8"])
    assert cfg.text.train.epochs == 3
    assert cfg.match.k == 30
    assert cfg.modalities == ["text", "tfidf"]
    assert cfg.image.head.margin_rad == 0.8
    assert load_config(None, ["text.train.lr=3e-5"]).text.train.lr == 3e-5  # YAML 1.1 reads this as a string
    assert cfg.learned == ["text"]
    # Untouched siblings keep their defaults.
    assert cfg.image.train.lr == Config().image.train.lr


def test_yaml_file_and_roundtrip(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("text:\n  max_length: 32\nmatch:\n  fusion_weights: {image: 0.3, text: 0.7}\n")
    cfg = load_config(path, ["seed=7"])
    assert cfg.text.max_length == 32 and cfg.seed == 7
    assert cfg.match.fusion_weights == {"image": 0.3, "text": 0.7}
    # The dumped resolved config loads back to the same object.
    again = tmp_path / "resolved.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_demo_preset_loads():
    cfg = load_config("demo")
    assert set(cfg.modalities) == {"image", "text", "tfidf", "phash"}
    assert cfg.image.pretrained is False


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["text.train.epoch=3"], "unknown key.*epoch.*valid keys"),
        (["match.k=many"], "match.k must be int"),
        (["modalities=[text,smell]"], "modalities"),
        (["min2"], "key=value"),
        (["folds.gallery=some"], "folds.gallery"),
        (["image.pretrained=maybe"], "true or false"),
    ],
)
def test_bad_overrides_are_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_missing_config_file_lists_presets():
    with pytest.raises(ConfigError, match="presets"):
        load_config("no_such_config")


def test_section_must_be_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        from_dict({"text": 3})


def test_images_are_needed_by_the_image_encoder_or_a_recomputed_phash():
    assert load_config(None, ["modalities=[image]"]).needs_images
    assert not load_config(None, ["modalities=[text,tfidf,phash]"]).needs_images
    assert load_config(None, ["modalities=[tfidf,phash]", "match.phash_source=image"]).needs_images
    assert not load_config(None, ["modalities=[tfidf]", "match.phash_source=image"]).needs_images


@pytest.mark.parametrize("override, key", [("match.blend_method=second", "blend_method"), ("match.index=lsh", "index"),
                                           ("match.k=1", "k"), ("tfidf.max_df=1.5", "max_df")])
def test_bad_matching_settings_are_refused_by_name(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])
