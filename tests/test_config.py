import pytest

from pipeline.config import Config, ConfigError, dump_config, from_dict, load_config


def test_defaults_and_overrides():
    cfg = load_config(
        None, ["text.train.epochs=3", "search.k=30", "modalities=[text,tfidf]", "image.head.margin_rad=0.8"]
    )
    assert cfg.text.train.epochs == 3
    assert cfg.search.k == 30
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
    assert cfg.fusion.weights == {"image": 0.3, "text": 0.7}
    # The dumped resolved config loads back to the same object.
    again = tmp_path / "resolved.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_demo_preset_loads():
    cfg = load_config("demo")
    assert set(cfg.modalities) == {"image", "text", "tfidf", "phash"}
    # ImageNet weights from a pip package, fine-tuned with the recipe of docs/image.md: no network.
    assert cfg.image.weights == "efficientnet-lite0" and cfg.image.backbone == "tf_efficientnet_lite0"
    assert not load_config("demo", ["image.weights=null"]).image.pretrained  # never the hub
    assert cfg.image.train.backbone_lr_mult == 0.1 and cfg.image.train.freeze_bn


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["text.train.epoch=3"], "unknown key.*epoch.*valid keys"),
        (["search.k=many"], "search.k must be an integer"),
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


def test_keys_of_the_former_match_section_are_read_in_their_new_sections(caplog):
    with caplog.at_level("WARNING", logger="pipeline"):
        cfg = load_config(
            None,
            [
                "match.k=30",
                "match.pair_model=false",
                "match.fusion_weights={image: 1}",
                "match.phash_source=image",
                "match.cv_estimate=false",
            ],
        )
    assert (cfg.search.k, cfg.pair.enabled, cfg.fusion.weights, cfg.phash.source, cfg.decision.cv_estimate) == (
        30,
        False,
        {"image": 1.0},
        "image",
        False,
    )
    assert "match.k is now search.k" in caplog.text and "match.pair_model is now pair.enabled" in caplog.text
    for removed in ("match.transductive=true", "match.rule_signals=[pair]"):
        with pytest.raises(ConfigError, match=r"was removed"):
            load_config(None, [removed])
    with pytest.raises(ConfigError, match=r"match\.knn.*moved to search, fusion, decision, pair and phash"):
        load_config(None, ["match.knn=3"])


def test_images_are_needed_by_the_image_encoder_or_a_recomputed_phash():
    assert load_config(None, ["modalities=[image]"]).needs_images
    assert not load_config(None, ["modalities=[text,tfidf,phash]"]).needs_images
    assert load_config(None, ["modalities=[tfidf,phash]", "phash.source=image"]).needs_images
    assert not load_config(None, ["modalities=[tfidf]", "phash.source=image"]).needs_images


@pytest.mark.parametrize(
    "override, key",
    [
        ("fusion.blend_method=second", "blend_method"),
        ("search.index=lsh", "index"),
        ("search.k=1", "k"),
        ("tfidf.max_df=1.5", "max_df"),
        ("pair.features=[]", r"pair\.features"),
        ("pair.features=[sims,standard]", r"pair\.features"),
    ],
)
def test_bad_matching_settings_are_refused_by_name(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("image.train.epochs=0", r"image\.train\.epochs must be >= 1"),
        ("text.train.epochs=-2", r"text\.train\.epochs must be >= 1"),
        ("image.train.batch_size=0", r"image\.train\.batch_size must be >= 2"),
        ("text.embed_batch_size=0", r"text\.embed_batch_size must be >= 1"),
        ("search.batch_size=0", r"search\.batch_size must be >= 1"),
        ("decision.n_thresholds=0", r"decision\.n_thresholds must be >= 2"),
        ("text.train.lr=-1e-4", r"text\.train\.lr must be > 0"),
        ("image.train.head_lr=0", r"image\.train\.head_lr must be > 0"),
        ("image.train.warmup_frac=1.5", r"image\.train\.warmup_frac must be in \[0, 1\)"),
        ("image.head.subcenters=0", r"image\.head\.subcenters must be >= 1"),
        ("text.head.kind=softmax", r"text\.head\.kind must be arcface or cosface"),
        ("tfidf.ngram_min=3", r"tfidf\.ngram_max must be >= ngram_min"),
        ("tfidf.char_ngram_max=1", r"tfidf\.char_ngram_max must be >= char_ngram_min"),
        ("tfidf.min_df=0", r"tfidf\.min_df must be >= 1"),
        ("fusion.blend_rounds=-1", r"fusion\.blend_rounds must be >= 0"),
        ("threads=0", r"threads must be in \[1, 1024\]"),
        ("search.k=null", r"search\.k must be an integer, got None"),
        ("search.k=true", r"search\.k must be an integer, got True"),
        ("seed=1.5", r"seed must be an integer"),
        ("text.train.lr=.inf", r"text\.train\.lr must be a finite number"),
        ("tfidf.max_features=many", r"tfidf\.max_features must be an integer"),
        ("modalities=", r"modalities must be a list of names"),
        ("fusion.weights={image: -1}", r"fusion\.weights\.image must be >= 0"),
        ("search.k=[3", r"override search\.k: '\[3' is not a YAML value"),
        ("search.index={a: [}", r"override search\.index: .* is not a YAML value"),
    ],
)
def test_values_that_cannot_train_are_refused_when_the_config_is_read(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_fusion_weights_must_name_a_learned_modality_that_is_on():
    with pytest.raises(ConfigError, match=r"fusion\.weights names \['image'\]"):
        load_config(None, ["modalities=[text,tfidf]", "fusion.weights={image: 0.4, text: 0.6}"])
    assert load_config(None, ["modalities=[image,text]", "fusion.weights={image: 0.4}"]).fusion.weights


def test_optional_values_take_null_and_their_type():
    cfg = load_config(None, ["tfidf.max_features=null", "image.weights=/x.pth", "text.train.lr=3e-5"])
    assert cfg.tfidf.max_features is None and cfg.image.weights == "/x.pth" and cfg.text.train.lr == 3e-5


def test_yaml_file_errors_are_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("match:\n  k: [3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML: .* at line \d+, column \d+") as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_threads_default_is_small_and_follows_omp_num_threads(monkeypatch):
    from pipeline.config import default_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= default_threads() <= 4
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1 and load_config(None).threads == 1
    assert load_config(None, ["threads=3"]).threads == 3


def test_local_files_the_config_names_must_exist(tmp_path):
    from pipeline.config import check_local_files

    with pytest.raises(ConfigError, match=r"image\.weights: .*nope\.pth does not exist"):
        check_local_files(load_config(None, ["modalities=[image]", f"image.weights={tmp_path / 'nope.pth'}"]))
    with pytest.raises(ConfigError, match=r"text\.model: .*missing_dir looks like a local folder"):
        check_local_files(load_config(None, ["modalities=[text]", f"text.model={tmp_path / 'missing_dir'}"]))
    # A hub name is not a local path; a modality that is off reads nothing.
    check_local_files(load_config(None, ["modalities=[text]", "text.model=sentence-transformers/all-MiniLM-L6-v2"]))
    check_local_files(load_config(None, ["modalities=[tfidf]", f"image.weights={tmp_path / 'nope.pth'}"]))
    (tmp_path / "w.pth").write_bytes(b"")
    check_local_files(load_config(None, ["modalities=[image]", f"image.weights={tmp_path / 'w.pth'}"]))
