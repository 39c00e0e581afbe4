#!/usr/bin/env python3
"""Writes tests/bad_inputs.md, the catalogue of bad inputs, from the cases of
tests/test_bad_inputs_cli.cpp as the real executable answers them:

    NORMLAB_PRINT_CATALOGUE=1 build/tests/normlab_tests --gtest_filter='BadInputs.*' \
        | python3 tests/bad_inputs_md.py > tests/bad_inputs.md

(BadInputsCatalogue.ListsEveryCase fails when a case has no row.)
"""
import re
import sys

import sys
small = "flatten, linear(8), relu, batchnorm, linear(10)"
bases = {
 'train': ["train","--data","{root}/data/good","--model",small,"--epochs","1","--batch-size","16","--threads","1","--progress","never","--out","{out}"],
 'eval': ["eval","<ckpt>","--data","{root}/data/good","--threads","1"],
 'depth': ["depth","--arch","none","--max-depth","1","--width","8","--threads","1","--out","{out}/depth"],
 'model': ["model","<spec>","--input","4x4"],
}
TITLES = {
    'Flags': 'Numeric and other flags',
    'ModelSpecs': 'Model specs',
    'DataDirectories': 'Data directories and IDX files',
    'Checkpoints': 'Checkpoints for eval and --resume',
}

INTRO = """# Bad inputs: the catalogue

Everything a user can throw at `normlab` that it must refuse, and how it
answers. Each row is a case of `tests/test_bad_inputs_cli.cpp`, run through the
real executable (`NORMLAB_BINARY`) on tiny data (4x4 images, 40 training and 20
test samples, written by the test) and a tiny model. For every case the test
asserts:

- a normal non-zero exit: no signal, exit code below 128, not 3 (`internal
  error`: an exception that is not a `normlab::Error`), no sanitizer report
  (under `scripts/test-sanitizers` the executable is built with ASan + UBSan);
- the message on stderr contains the parts listed in the test: the flag, file,
  tensor or layer, and the offending value;
- it ends within 30 s (every case takes ~0.05 s; the FIFO and `/dev/zero`
  cases would block or read forever without their fix);
- nothing is written: the run directory, which holds a good earlier run
  (`model.safetensors`, `checkpoint.safetensors`, `metrics.jsonl`), the working
  directory (empty) and the input checkpoints are byte-identical afterwards.

Exit codes: 2 for a `normlab::Error`, 100-115 for CLI11's parse errors (the
numeric checks of `apps/normlab/strict_numbers.cpp` are among them: 105).
The messages below are the first line of stderr with the `normlab: error: `
prefix dropped and the temporary directory written `{root}`.

Base command lines (a row shows what it changes, `…` the rest):

- `train --data {root}/data/good --model 'flatten, linear(8), relu, batchnorm, linear(10)' --epochs 1 --batch-size 16 --threads 1 --progress never --out {out}`
- `eval <checkpoint> --data {root}/data/good --threads 1`
- `depth --arch none --max-depth 1 --width 8 --threads 1 --out {out}/depth`
- `model <spec> --input 4x4`

"huge" is 99999999999999999999, beyond every 64-bit integer; a second huge value
inside the range (1e12, 1e7, ...) checks the flag's own limit. Regenerate this
file with `tests/bad_inputs_md.py` (see its header).
"""

OUTRO = """
## Edge values that are not bad (`BadInputs.EdgeValuesThatMeanSomething`)

Zero or large values with a documented meaning run and do what the help says:
`--threads 0` (OpenMP's default), `--seed 0` and `--seed 18446744073709551615`,
`--limit-train 0 --limit-test 0` (the whole sets), limits above the set's size
(the whole set), `--checkpoint-every 0` (epoch ends only) and
`--checkpoint-every 9223372036854775807`, `--batch-size 1048576` and
`--eval-batch-size 1048576` (one batch of everything), `--weight-decay 0`, SGD
`--momentum 0`, `--epochs 003` (3, decimal: CLI11 alone read 010 as octal 8),
`--epochs +2`, `eval --threads 0 --batch-size 1`, `depth --min-depth 0
--max-depth 0 --seed 0`, `model --input 1`.

The unreadable data directory (mode 000, `BadInputs.UnreadableDataDirectory`)
is skipped as root, whom permissions do not stop; run as another user
(`runuser -u nobody -- build/tests/normlab_tests --gtest_filter='BadInputs.*'`)
it passes with `data directory <dir> cannot be read (permission denied)`.

## Training that cannot silently go wrong

| case | input | expected behaviour | test |
|---|---|---|---|
| a NaN in step 18 (injected with `NORMLAB_FAULT_BATCHES`) | `train --checkpoint-every 4` (13 steps an epoch) | exit 2: `training stopped at step 18 (epoch 2, batch 5): training step 18: the input batch holds nan ...; the last checkpoint in <out> is kept`; the checkpoint of step 16 stays (same tensors as a run failing at step 19), `--resume` from it ends with the tensors of a run that never failed | `NonFinite.StopNamesTheStepAndKeepsTheLastGoodCheckpoint` (tests/test_train_nonfinite.cpp) |
| a NaN in the first step | `train --out first/run` | exit 2 naming step 1, no "kept", the directories it made are removed | `NonFinite.StopAtTheFirstStepLeavesNoDirectory` |
| NaN in steps 3 and 18, `--on-nonfinite skip` | | exit 0; `warning: skipped step 3` and `... step 17`; each epoch's metrics count 1 skipped step; 24 optimizer steps | `NonFinite.SkipSkipsTheBadStepsAndContinues` |
| every step of an epoch skipped | | train loss NaN (null in JSON); its checkpoint still resumes | `NonFinite.AnEpochOfSkippedStepsStillResumes` |
| `--lr 1e30`, SGD `--momentum 1e30` | | exit 2 naming the step; the earlier run's files unchanged | `BadInputs.Flags` (rows above) |
| `--weight-decay 1e30`: Adam's second moment overflows to inf with finite gradients | | the save is refused (`training stopped after step 3 (at the end of epoch 1): refusing to write .../checkpoint.safetensors: tensor 'optimizer.exp_avg_sq.1.weight' holds 128 non-finite values ...`); neither file is written (the checkpoint is written first) | `BadInputs.Flags` |
| SIGKILL after 1 checkpoint, while writing the 6th, after 13; twice in a row | `train` seed001, 3000 MNIST samples, 3 epochs, `--checkpoint-every 5`, 1 thread | the checkpoint left parses with all its tensors; `--resume` ends with model and checkpoint tensors bit-identical to an uninterrupted run and the same epoch metrics; the half-written temporary of the killed writer is removed by the resumed run | `KillResume.EndsWithTheWeightsOfAnUninterruptedRun`, `KillResume.TwoKillsInARow` (tests/test_kill_resume.cpp) |

## The same inputs at the library level

The readers are tested directly, case by case, with more variants than the
executable needs to see:

- IDX files: `IdxBadFiles.EachIsRefusedWithAMessageNamingFileAndProblem` (28
  files: empty, truncated header and body, too long, wrong magic, each
  unsupported type, every wrong rank, zero, negative and overflowing dims, the
  size cap, 10 kinds of damaged gzip), `IdxBadFiles.MissingFileAndDirectory`,
  `IdxBadFiles.UnreadableFile` (tests/test_idx.cpp).
- Datasets: `DatasetBadFiles.*` (more or fewer labels than images, a label out
  of range, images and labels swapped, a damaged file named inside a load,
  missing or unreadable directory) and `DataDir.*` (tests/test_dataset.cpp).
- safetensors: `Safetensors.RefusesEveryMalformedFile`,
  `Safetensors.ReadErrorsNameThePath`, `SafetensorsAtomicWrite.*`
  (tests/test_safetensors.cpp).
- Checkpoints: `Checkpoint.BadFilesAreRefusedAndLeaveTheModelUnchanged` (14
  damaged files; the model is left exactly as it was),
  `Checkpoint.ShapesFromAnotherModelAreNamed`, `Checkpoint.OptimizerStateIsCheckedToo`,
  `Checkpoint.SaveRefusesNonFiniteValuesAndKeepsTheGoodFile` (tests/test_checkpoint.cpp).
- Model specs: `ModelSpecErrors.*` (tests/test_model_spec.cpp).
- The trainer: `Trainer.NanInputIsCaughtWithTheStepBeforeAnyUpdate`,
  `Trainer.NonFiniteLossIsCaughtBeforeAnyUpdate`,
  `Trainer.NonFiniteGradientIsCaughtNamingTheParameter` (tests/test_train.cpp).
- Numerics at the edges: tests/test_numerics_edges.cpp, docs/numerics.md.

And by the fuzzers (fuzz/fuzz_idx.cpp, fuzz/fuzz_checkpoint.cpp,
fuzz/fuzz_model_spec.cpp; `scripts/fuzz`, in CI for 60 s each), whose seeds and
every input they ever found a problem with (fuzz/regressions/) are replayed by
`FuzzRegressions.*` in the ordinary suite.
"""


def q(t):
    if len(t) > 80:  # e.g. 60000 nested groups
        t = t[:12] + '…' + t[-12:] + f' ({len(t)} characters)'
    return "'"+t+"'" if (' ' in t or t=='' or ',' in t) else t
def describe(args):
    if not args: return "`normlab`"
    cmd=args[0]
    b=bases.get(cmd)
    if b is None: return "`normlab "+" ".join(q(a) for a in args)+"`"
    out=[cmd]
    # positional
    rest=args[1:]
    if cmd in ('eval','model'):
        if len(rest)>0 and not rest[0].startswith('--'):
            out.append(q(rest[0])); rest=rest[1:]
        else:  # no positional argument: show the command as it is
            return "`normlab "+" ".join(q(a) for a in args)+"`"
        base_rest=b[2:]
    else:
        base_rest=b[1:]
    # parse flag pairs of base
    bd={}
    i=0
    while i<len(base_rest):
        bd[base_rest[i]]=base_rest[i+1]; i+=2
    changes=[]
    i=0
    seen=set()
    while i<len(rest):
        f=rest[i]
        if i+1<len(rest) and not (rest[i+1].startswith('--') and len(rest[i+1])>2 and not rest[i+1][2].isdigit()):
            v=rest[i+1]; i+=2
        else:
            v=None; i+=1
        seen.add(f)
        if f in bd and bd[f]==v: continue
        changes.append(f+(" "+q(v) if v is not None else ""))
    for f in bd:
        if f not in seen: changes.append("no "+f)
    return "`normlab "+" ".join(out)+" …"+(" "+" ".join(changes) if changes else "")+"`"
def esc(s): return s.replace('|','\\|')
rows=[]
for line in sys.stdin:
    if line.startswith('CASE\t'):
        rows.append(line.rstrip('\n').split('\t')[1:])
    elif line.startswith('[ RUN      ] BadInputs.'):
        current=line.split('BadInputs.')[1].strip()
        continue
    else:
        continue
    rows[-1].insert(0,current)
rows=[[t,n,r,c,re.sub(r'\{root\}/case[0-9]+/out','{out}',re.sub(r'/tmp/normlab-test-[A-Za-z0-9]+','{root}',m))] for t,n,r,c,m in rows]
print(INTRO)
cur=None
for test,name,raw,code,msg in rows:
    if test!=cur:
        cur=test
        print(f"\n## {TITLES.get(test, test)} (`BadInputs.{test}`)\n")
        print("| case | input | expected behaviour (exit code: message on stderr) | test |")
        print("|---|---|---|---|")
    args=raw.split('\x1f') if raw else []
    msg=msg.replace('normlab: error: ','')
    if len(msg)>220: msg=msg[:217]+'…'
    print(f"| {esc(name)} | {esc(describe(args))} | {code}: {esc(msg)} | `BadInputs.{test}` |")

print(OUTRO)
