from pipeline.reporting.text import _groups_in_words


def test_the_report_says_whether_the_group_step_is_used_left_out_or_skipped():
    pairs = {"f1": 0.91}
    used = {"pairs_final": pairs, "groups": {"f1": 0.92}, "final": {"f1": 0.92}}
    assert "0.9100 with the pairs, 0.9200 with the groups" in _groups_in_words(used)
    left_out = {"groups": {"f1": 0.90, "kept": False}, "final": pairs}
    assert "scored 0.9000, more than the tolerance below the pairs' own 0.9100" in _groups_in_words(left_out)
    skipped = {"groups": {"skipped": "no pair model"}, "final": pairs}
    assert _groups_in_words(skipped) == "no group decision (no pair model)."
