"""`vidcap caption`: caption video files with a checkpoint, optionally explain them with attention plots."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from vidcap.errors import DECODER_ERRORS, UsageError, VidcapError
from vidcap.precision import PRECISIONS

HELP = "caption video files with a trained checkpoint; --explain draws which frames each word came from"
EXAMPLE = """
  vidcap caption clip.mp4 other.avi --checkpoint runs/global/checkpoints/best.ckpt
  vidcap caption videos/*.mp4 --checkpoint best.ckpt --beam-size 5 --n-best 3 --json > captions.jsonl
  vidcap caption clip.mp4 --checkpoint best.ckpt --explain explain/     # writes explain/clip.png
  vidcap caption videos/*.mp4 --checkpoint best.ckpt --report report/   # report/index.html: a card per video
  vidcap caption long.mp4 --checkpoint best.ckpt --start 00:01:30 --end 00:01:42.5   # a clip of a long video
"""

logger = logging.getLogger(__name__)


def _time(text: str) -> float:
    from vidcap.video.windows import parse_time

    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", metavar="VIDEO",
                        help="video files (any format FFmpeg reads), or videos inside tar shards: SHARD.tar::MEMBER")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a checkpoint written by `vidcap fit` (it carries the vocabulary and the extractors)")
    parser.add_argument("--beam-size", type=int, default=None, metavar="K",
                        help="beam width; 1 = greedy (default: the model's model.decoding.beam_size, usually 5)")
    parser.add_argument("--n-best", type=int, default=None, metavar="N",
                        help="captions per video, best first (at most the beam size; default: the model's "
                             "model.decoding.n_best, usually 1). Text output puts the alternatives after the best "
                             "caption, tab-separated")
    parser.add_argument("--max-len", type=int, default=None, metavar="L",
                        help="most words per caption (default: the model's model.decoding.max_len)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: path, caption, score (log-prob), alternatives, "
                             "frame_times, words, attention (words x frames), explanation (the PNG, with --explain)")
    parser.add_argument("--explain", metavar="DIR", type=Path,
                        help="write DIR/<video name>.png per video: the sampled frames, the attention of each word "
                             "over them, and the caption")
    parser.add_argument("--report", metavar="DIR", type=Path,
                        help="write DIR/index.html, an offline page with one card per video: its sampled frames, "
                             "caption, n-best, and the frames each word attended to (hover a word)")
    parser.add_argument("--start", type=_time, default=None, metavar="TIME",
                        help="with --end: caption the clip [start, end) of each video, its frames sampled inside it "
                             "(seconds, or HH:MM:SS.fff); the output names it VIDEO#t=START,END")
    parser.add_argument("--end", type=_time, default=None, metavar="TIME", help="end of that clip")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default cpu)")
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS,
                        help="numeric precision of the captioning model (default 32-true); the feature extractors "
                             "run as the feature store recorded")


def explain_names(videos: list[str]) -> list[str]:
    """A distinct PNG file name per input: the video's stem, numbered from its second use on
    (a/clip.mp4, b/clip.mp4 -> clip.png, clip-2.png; shard.tar::000000012.mp4 -> 000000012.png)."""
    from vidcap.video.tar_members import member_stem

    used: set[str] = set()
    names = []
    for video in videos:
        stem = member_stem(video) or "video"
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        names.append(f"{name}.png")
    return names


def _reason(error: VidcapError, path: str) -> str:
    # VideoError messages start with the path ("PATH: reason"); the skip line names it already.
    text = str(error)
    return text[len(path) + 2:] if text.startswith(f"{path}: ") else text


def _windowed(videos: list[str], start: float | None, end: float | None) -> list[str]:
    """The videos, or their clips `VIDEO#t=START,END` (vidcap.video.windows) with --start/--end."""
    from vidcap.video.windows import window_ref

    if start is None and end is None:
        return videos
    if start is None or end is None:
        raise UsageError("--start and --end go together: give both")
    try:
        return [window_ref(video, start, end) for video in videos]
    except ValueError as error:
        raise UsageError(f"--start {start:g} --end {end:g}: {error}") from None


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vidcap.caption import caption_video, explain_result, load_captioner
    from vidcap.model.checkpoint import with_overrides
    from vidcap.report.cards import caption_card
    from vidcap.report.page import report_folder, write_report

    if args.explain is not None and args.explain.exists() and not args.explain.is_dir():
        raise UsageError(f"--explain {args.explain}: exists and is not a folder")
    videos = _windowed(args.videos, args.start, args.end)
    if args.report is not None:
        report_folder(args.report)  # now, not after loading the model and captioning every video
    captioner = load_captioner(args.checkpoint, device=args.device, precision=args.precision)
    # The model's own decoding options, with the flags given in their place, as `vidcap evaluate` decodes.
    options = with_overrides(captioner.decoding, beam_size=args.beam_size, max_len=args.max_len, n_best=args.n_best)
    cards = []  # of the report: thumbnails as JPEG, the frames themselves are not kept
    names = explain_names(args.videos) if args.explain is not None else []
    failed = 0
    # The bar only helps for several videos; it writes to stderr so stdout stays one line per video.
    bar = tqdm(videos, desc="captioning", unit="video", disable=len(videos) < 2 or None, file=sys.stderr)
    for i, video in enumerate(bar):
        try:
            result = caption_video(video, captioner, options,
                                   with_frames=args.explain is not None or args.report is not None)
        except VidcapError as error:
            failed += 1
            bar.write(f"skipping {video}: {_reason(error, video)}", file=sys.stderr)
            continue
        except DECODER_ERRORS as error:
            # A file the decoders choke on in a way vidcap.video.reader does not foresee must not end a batch of thousands:
            # one line, and the traceback with -v.
            logger.debug("%s: unexpected error", video, exc_info=True)
            failed += 1
            reason = " ".join(str(error).split()) or "no message"
            bar.write(f"skipping {video}: cannot caption it ({type(error).__name__}: {reason})", file=sys.stderr)
            continue
        png = args.explain / names[i] if args.explain is not None else None
        if args.json:
            record = result.to_json()
            if png is not None:
                record["explanation"] = str(png)
            line = json.dumps(record, ensure_ascii=False)
        else:
            line = "\t".join([video, *(text for text, _ in result.alternatives)])
        print(line, flush=True)
        if args.report is not None:
            cards.append(caption_card(result))
        if png is not None:
            try:
                explain_result(result, png)
            except OSError as error:  # e.g. a full disk or a read-only folder: the caption is out, say what is not
                failed += 1
                bar.write(f"{video}: explanation not written: {error}", file=sys.stderr)
                continue
            logger.debug("%s: explanation in %s", video, png)
    if args.report is not None:
        page = write_report(args.report, cards, title="vidcap caption",
                            info={"checkpoint": args.checkpoint, "decoding": asdict(options)})
        print(f"report: {page}", file=sys.stderr)
    if failed:
        logger.info("%d of %d videos failed", failed, len(args.videos))
    return 1 if failed else 0
