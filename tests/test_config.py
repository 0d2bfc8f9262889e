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
        (["match.k=many"], "match.k must be an integer"),
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


def test_the_size_invariant_pair_settings_load():
    cfg = load_config(None, ["match.pair_features=[standard,text,numbers]", "match.rule_signals=[pair]"])
    assert cfg.match.pair_features == ["standard", "text", "numbers"] and cfg.match.rule_signals == ["pair"]
    assert "standard" not in load_config(None).match.pair_features  # measured first, off by default


def test_images_are_needed_by_the_image_encoder_or_a_recomputed_phash():
    assert load_config(None, ["modalities=[image]"]).needs_images
    assert not load_config(None, ["modalities=[text,tfidf,phash]"]).needs_images
    assert load_config(None, ["modalities=[tfidf,phash]", "match.phash_source=image"]).needs_images
    assert not load_config(None, ["modalities=[tfidf]", "match.phash_source=image"]).needs_images


@pytest.mark.parametrize("override, key", [("match.blend_method=second", "blend_method"), ("match.index=lsh", "index"),
                                           ("match.k=1", "k"), ("tfidf.max_df=1.5", "max_df"),
                                           ("match.rule_signals=[pair,smell]", "rule_signals"),
                                           ("match.pair_features=[]", "pair_features"),
                                           ("match.pair_features=[sims,gossip]", "pair_features")])
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
        ("match.batch_size=0", r"match\.batch_size must be >= 1"),
        ("match.n_thresholds=0", r"match\.n_thresholds must be >= 2"),
        ("text.train.lr=-1e-4", r"text\.train\.lr must be > 0"),
        ("image.train.head_lr=0", r"image\.train\.head_lr must be > 0"),
        ("image.train.warmup_frac=1.5", r"image\.train\.warmup_frac must be in \[0, 1\)"),
        ("image.head.subcenters=0", r"image\.head\.subcenters must be >= 1"),
        ("text.head.kind=softmax", r"text\.head\.kind must be arcface or cosface"),
        ("tfidf.ngram_min=3", r"tfidf\.ngram_max must be >= ngram_min"),
        ("tfidf.char_ngram_max=1", r"tfidf\.char_ngram_max must be >= char_ngram_min"),
        ("tfidf.min_df=0", r"tfidf\.min_df must be >= 1"),
        ("match.blend_rounds=-1", r"match\.blend_rounds must be >= 0"),
        ("threads=0", r"threads must be in \[1, 1024\]"),
        ("match.k=null", r"match\.k must be an integer, got None"),
        ("match.k=true", r"match\.k must be an integer, got True"),
        ("seed=1.5", r"seed must be an integer"),
        ("text.train.lr=.inf", r"text\.train\.lr must be a finite number"),
        ("tfidf.max_features=many", r"tfidf\.max_features must be an integer"),
        ("modalities=", r"modalities must be a list of names"),
        ("match.fusion_weights={image: -1}", r"match\.fusion_weights\.image must be >= 0"),
        ("match.k=[3", r"override match\.k: '\[3' is not a YAML value"),
        ("match.index={a: [}", r"override match\.index: .* is not a YAML value"),
    ],
)
def test_values_that_cannot_train_are_refused_when_the_config_is_read(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_fusion_weights_must_name_a_learned_modality_that_is_on():
    with pytest.raises(ConfigError, match=r"match\.fusion_weights names \['image'\]"):
        load_config(None, ["modalities=[text,tfidf]", "match.fusion_weights={image: 0.4, text: 0.6}"])
    assert load_config(None, ["modalities=[image,text]", "match.fusion_weights={image: 0.4}"]).match.fusion_weights


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
