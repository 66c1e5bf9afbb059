"""The benchmark behind `make bench` (run it as `python -m benchmarks.bench` from the repository root).

This package is not installed with the project: it measures the project, against fixed yardsticks.
benchmarks/bench.py describes what is measured and why; this module gathers the public names of the
modules it is made of (all but bench.py itself, which `python -m` runs as __main__).
"""
from benchmarks.corpus import (
                               GENERATOR_VERSION,
                               CorpusSpec,
                               SourceImage,
                               draw_size,
                               ensure_corpus,
                               load_images,
                               make_photo,
                               spread_sample,
)
from benchmarks.img2dataset import img2dataset_bench, img2dataset_run
from benchmarks.kernels import (
                               encode_jpeg,
                               kernels_for,
                               naive_kernel,
                               one_cpu,
                               per_image_best,
                               project_kernel,
                               reference_kernel,
                               reference_on_all_cores,
                               target_size,
                               time_kernels,
)
from benchmarks.naive import naive_convert
from benchmarks.phases import PHASES, profile_phases
from benchmarks.procmem import MemoryPeak, SampledRun, TreeMemorySampler, process_tree, rss_bytes, run_sampled
from benchmarks.report import (
                               check_targets,
                               machine_info,
                               make_mode_report,
                               make_report,
                               memory_scaling,
                               print_memory_scaling,
                               print_mode,
                               print_report,
                               print_targets,
)
from benchmarks.rounds import (
                               STARTUP_SPEC,
                               best_run,
                               build_round,
                               mode_result,
                               one_core_figures,
                               run_bench,
                               run_memory,
                               write_report,
)
from benchmarks.runs import REPO_ROOT, BuildRun, naive_script_build, pipeline_build, warm_page_cache
from benchmarks.settings import (
                               DEFAULT_IMAGES,
                               DEFAULT_OUT,
                               DEFAULT_RESIZE,
                               DEFAULT_SCALING_IMAGES,
                               IMAGENET_1K,
                               IMAGENET_21K,
                               QUALITY,
                               RESIZES,
                               GiB,
                               Settings,
)

__all__ = [
    # settings
    "DEFAULT_IMAGES", "DEFAULT_SCALING_IMAGES", "DEFAULT_OUT", "RESIZES", "DEFAULT_RESIZE", "QUALITY", "GiB",
    "IMAGENET_1K", "IMAGENET_21K", "Settings",
    # corpus
    "GENERATOR_VERSION", "CorpusSpec", "draw_size", "make_photo", "ensure_corpus", "SourceImage", "load_images",
    "spread_sample",
    # kernels
    "target_size", "encode_jpeg", "reference_kernel", "naive_kernel", "project_kernel", "kernels_for", "one_cpu",
    "per_image_best", "time_kernels", "reference_on_all_cores",
    # phases
    "PHASES", "profile_phases",
    # runs and the naive script
    "REPO_ROOT", "BuildRun", "warm_page_cache", "pipeline_build", "naive_script_build", "naive_convert",
    # img2dataset
    "img2dataset_run", "img2dataset_bench",
    # procmem
    "MemoryPeak", "SampledRun", "TreeMemorySampler", "process_tree", "rss_bytes", "run_sampled",
    # report
    "make_mode_report", "check_targets", "machine_info", "print_mode", "print_targets", "make_report", "print_report",
    "memory_scaling", "print_memory_scaling",
    # rounds
    "STARTUP_SPEC", "one_core_figures", "build_round", "mode_result", "best_run", "run_bench", "write_report",
    "run_memory",
]
