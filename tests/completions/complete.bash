# Prints, one a line, what bash completes for a command line ending at the cursor, as readline would
# ask the function that a completion script registers for the line's command.
# Usage: bash complete.bash SCRIPT LINE
set -u
source "$1"
COMP_LINE=$2
COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<<"$COMP_LINE"
[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
registered=$(complete -p "${COMP_WORDS[0]}") || exit 1
function=$(sed -n 's/.* -F \([^ ]*\) .*/\1/p' <<<"$registered")
COMPREPLY=()
"$function" "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
if ((${#COMPREPLY[@]})); then printf '%s\n' "${COMPREPLY[@]}"; fi
