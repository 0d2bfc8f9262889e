from pipeline.machine import load_average, machine_facts


def test_machine_facts_name_the_cores_blas_and_thread_settings(monkeypatch):
    # OPENBLAS_CORETYPE changes which kernels OpenBLAS runs: a timing must say when it was set.
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    facts = machine_facts()
    assert facts["cores"] >= 1 and isinstance(facts["cpu"], str)
    assert facts["env"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert all({"internal_api", "num_threads", "library"} <= set(pool) for pool in facts["blas_openmp"])
    assert len(load_average()) == 3
