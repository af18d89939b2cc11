"""The compilation cache keeps each host CPU type's programs apart."""
import os

from ankh3 import compile_cache

AMX_XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile
cpu MHz\t\t: 2100.000

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile
cpu MHz\t\t: 2100.000
"""


def test_hosts_whose_cpus_differ_in_features_get_different_folders():
    avx2_only = AMX_XEON.replace(" avx512f avx512_bf16 amx_bf16 amx_tile", "")
    assert compile_cache.host_cpu_tag(AMX_XEON) != compile_cache.host_cpu_tag(avx2_only)


def test_the_same_cpu_type_gets_the_same_folder_whatever_its_clock_or_core_count():
    slower_single_core = AMX_XEON.split("\n\n")[0].replace("2100.000", "1800.000")
    assert compile_cache.host_cpu_tag(AMX_XEON) == compile_cache.host_cpu_tag(slower_single_core)


def test_child_processes_and_this_process_use_this_hosts_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    env = compile_cache.cache_env(str(tmp_path))
    assert env["JAX_COMPILATION_CACHE_DIR"] == os.path.join(str(tmp_path), compile_cache.host_cpu_tag())
    assert compile_cache.cache_env("") == {}
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere/chosen")  # an explicit choice wins
    assert compile_cache.cache_env(str(tmp_path)) == {}
