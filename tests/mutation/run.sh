#!/usr/bin/env bash
# Mutation testing of the numeric core with mutmut (a developer's check, not part of CI).
#
#     pip install -e ".[test,mutation]"
#     tests/mutation/run.sh                     # the core functions below, about 40 minutes on 2 busy cores
#     tests/mutation/run.sh "tid.x_select_drops*" "models.falcon.*"    # other mutmut name patterns
#     MAX_CHILDREN=1 tests/mutation/run.sh      # fewer parallel workers (default 2)
#
# Files and tests are set in pyproject.toml [tool.mutmut]. The run works on a copy of the repo in
# .mutation/ (git-ignored) in which no-grad decorators are written as `with` blocks (unwrap.py):
# mutmut leaves decorated functions alone, and score_rows, beam_search and two TID scores are decorated.
# Each mutant runs against the tests that reach the mutated function. Afterwards, from .mutation/repo:
# `mutmut results` lists the survivors, `mutmut show NAME` shows one mutant's change.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -c "import mutmut" 2>/dev/null || { echo "error: mutmut is not installed: pip install -e \".[mutation]\"" >&2; exit 2; }
CORE=(
  "tid.x_drop_ratio*" "tid.x_droppable_mask*" "tid.x_select_drops*" "tid.x_entropy_scores*"
  "tid.x_gradient_norm_scores*" "tid.x_attention_mass_scores*" "tid.xǁTokenImportanceDropoutǁscores*"
  "tid.xǁTokenImportanceDropoutǁmask*"
  "perplexity.scoring.x_window_plan*" "perplexity.scoring.x_score_rows*" "perplexity.scoring.x_token_nll*"
  "perplexity.scoring.x_encode_rows*" "perplexity.scoring.xǁScoresǁperplexities*"
  "generators.beam_search.*"
  "models.convert.x_to_hf_state_dict*" "models.convert.x_to_meta*" "models.convert.x__interleave_rotary*"
  "modelskv.quantize.*"
  "models.falcon.x_route*" "models.falcon.xǁMoEǁforward*" "models.falcon.xǁMoEǁcapacity*"
)
[ $# -gt 0 ] && CORE=("$@")
python tests/mutation/unwrap.py .mutation/repo
cd .mutation/repo
rm -f mutants/mutmut-stats.json   # the copy has no git history to tell changed tests: map tests to code anew
export OMP_NUM_THREADS=1   # one thread per worker: the workers run side by side
start=$(date +%s)
nice -n 10 mutmut run --max-children "${MAX_CHILDREN:-2}" "${CORE[@]}"
mutmut results
echo "mutation run: $(( $(date +%s) - start )) s"
