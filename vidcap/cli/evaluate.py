"""`vidcap evaluate`: decode a split with a checkpoint, write predictions.json + metrics.json, print a Table 1 row;
with --report, the HTML report of the split (vidcap.report.cards)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vidcap.datasets import positive_int
from vidcap.precision import PRECISIONS

HELP = ("decode a split with a checkpoint: predictions.json, metrics.json (BLEU-4, METEOR, CIDEr, ROUGE-L, "
        "perplexity) and a row in the paper's Table 1 layout")
EXAMPLE = """\
  vidcap evaluate --checkpoint runs/msvd/checkpoints/last.ckpt --data data/msvd --features features/msvd \\
      --split test --beam-size 5 --out eval/msvd --compare
  vidcap evaluate --checkpoint demo_out/run/checkpoints/last.ckpt --data demo_out/data \\
      --features demo_out/features --reverse          # + the reversal test (frames fed in reverse order)
  vidcap evaluate ... --devices 2                       # 2 processes (DDP); same numbers as 1
  vidcap evaluate ... --compare --report eval/msvd/report   # + eval/msvd/report/index.html: one card per video
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by `vidcap fit` (.ckpt)")
    parser.add_argument("--data", required=True, help="the data directory (`vidcap prepare`)")
    parser.add_argument("--features", required=True, help="the feature store (`vidcap extract`)")
    parser.add_argument("--split", default="test", help="split of captions.csv to evaluate (default: test)")
    parser.add_argument("--beam-size", type=positive_int, default=None,
                        help="beam size K; 1 = greedy (default: the model's model.decoding.beam_size, usually 5)")
    parser.add_argument("--max-len", type=positive_int, default=None,
                        help="most words per caption (default: the model's model.decoding.max_len)")
    parser.add_argument("--n-best", type=positive_int, default=None,
                        help="also write nbest.json with this many captions per video (<= beam size; default: the "
                             "model's model.decoding.n_best, usually 1)")
    parser.add_argument("--reverse", action="store_true",
                        help="reversal test: decode again with each video's frames in reverse order "
                             "(reversed_predictions.json, metrics.json reversal_changed)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: eval-<checkpoint name>-<split> beside the checkpoint)")
    parser.add_argument("--compare", action="store_true",
                        help="print the paper's row for the same variant and dataset beside ours")
    parser.add_argument("--report", metavar="DIR", default=None,
                        help="also write DIR/index.html, an offline page with one card per video (frames, caption, "
                             "references, per-video BLEU-4/METEOR/CIDEr-D, attention on hover), worst first")
    parser.add_argument("--devices", type=positive_int, default=1,
                        help="processes (DDP); with --accelerator gpu, GPUs (default: 1)")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu", "auto"], help="(default: cpu)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="videos per batch (default: 32)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: 0)")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="leave out (and count) videos whose feature file is corrupt, instead of refusing to "
                             "start (`vidcap verify FEATS` lists them; a rerun of `vidcap extract` repairs them)")
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS,
                        help="numeric precision of the model (default: 32-true); bf16-mixed reproduces the val/ "
                             "numbers of a run trained with trainer.precision bf16-mixed")


def paper_metrics(result) -> tuple[str | None, dict | None]:
    """The paper's Table 1 dataset name and row for the evaluated model's variant and dataset (None, None: no row)."""
    from vidcap.datasets import registry
    from vidcap.report.table import paper_row

    module = registry().get(result.dataset) if result.dataset else None
    paper_dataset = module.PAPER_DATASET if module else None
    return paper_dataset, paper_row(paper_dataset, result.model.get("variant")) if paper_dataset else None


def table_rows(result, compare: bool) -> tuple[list, list[str]]:
    """Rows for vidcap.report.table.format_table: ours, and with `compare` the paper's; plus notes to print below."""
    from vidcap.report.table import VARIANT_LABELS, local_feature_name, model_label

    rows = [(f"ours: {model_label(result.model, local_feature_name(result.features))}", result.metrics)]
    notes = []
    if compare:
        variant = result.model.get("variant")
        paper_dataset, paper = paper_metrics(result)
        if paper is None:
            notes.append(f"the paper has no {variant} row for dataset {result.dataset or '(unknown: no prepare.json)'}")
        else:
            rows.append((f"paper ({paper_dataset}): {VARIANT_LABELS[variant]}", paper))
    return rows, notes


def run(args: argparse.Namespace) -> int:
    from vidcap.datasets.synthetic.events import CONTENT_METRIC_KEYS
    from vidcap.evaluation import evaluate, write_outputs
    from vidcap.model.checkpoint import read_decoding, with_overrides
    from vidcap.report.table import format_table

    def check_outputs() -> None:
        if args.report:
            from vidcap.report.page import report_folder

            report_folder(args.report)  # now, not after minutes of decoding

    # The model's own decoding options (vidcap.model.checkpoint.trained_decoding), with the flags given in their place:
    # `vidcap caption` decodes the same way.
    decoding = with_overrides(read_decoding(args.checkpoint), beam_size=args.beam_size, max_len=args.max_len,
                              n_best=args.n_best)
    result = evaluate(
        args.checkpoint, args.data, args.features, decoding, split=args.split, reverse=args.reverse,
        devices=args.devices, accelerator=args.accelerator, batch_size=args.batch_size,
        num_workers=args.num_workers, precision=args.precision, check_outputs=check_outputs,
        skip_corrupt=args.skip_corrupt,
    )
    if result.rank != 0:  # DDP: the other ranks' results are the same; rank 0 reports them
        return 0
    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else checkpoint.parent / f"eval-{checkpoint.stem}-{args.split}"
    written = write_outputs(result, out)
    rows, notes = table_rows(result, args.compare)
    print(f"{args.split} split, {len(result.predictions)} videos, beam {result.options['beam_size']} ({checkpoint})")
    print(format_table(rows, extra=("ROUGE_L",)))
    for note in notes:
        print(note)
    content = {k: result.metrics[k] for k in CONTENT_METRIC_KEYS if k in result.metrics}
    if "reversal_changed" in result.metrics:
        content["reversal_changed"] = result.metrics["reversal_changed"]
    if content:
        print(", ".join(f"{k} {v:.3f}" for k, v in content.items()))
    print("wrote " + ", ".join(str(p) for p in written.values()), file=sys.stderr)
    if args.report:
        from vidcap.report.cards import write_evaluation_report

        paper = paper_metrics(result)[1] if args.compare else None
        page = write_evaluation_report(result, args.data, args.report, paper=paper)
        print(f"report: {page}", file=sys.stderr)
    return 0
