# Prints, one a line, what zsh's completion system offers for a command line ending at the cursor: an
# interactive zsh on a pseudo-terminal, with the script's directory in $fpath, is sent the line and a
# TAB, and every match the completion functions add is printed as it is added.
# Usage: zsh -f complete.zsh SCRIPT_DIRECTORY LINE
zmodload zsh/zpty || exit 1
zpty shell zsh -f -i
zpty -w shell "PROMPT= ; RPROMPT= ; fpath=(${(q)1} \$fpath); autoload -U compinit; compinit -u -D"
# Matches are added with compadd: report each one (its -O/-A/-D forms only compute, they add nothing).
zpty -w shell 'compadd () { if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
  local -a hits; builtin compadd -A hits "$@"; local hit; for hit in $hits; do print -r -- "<MATCH>$hit"; done; }'
# TAB completes, then says it is done: nothing more is typed before, so none of it is typeahead.
zpty -w shell 'complete-and-say-so () { zle complete-word; print -r -- "<COMPLETED>"; }'
zpty -w shell 'zle -N complete-and-say-so; bindkey "^I" complete-and-say-so; zstyle ":completion:*" insert-tab false'
zpty -w shell 'print -r -- "<READY>"'
zpty -r shell line '*<READY>*'  # the command, echoed
zpty -r shell line '*<READY>*'  # its output
zpty -n -w shell "$2"$'\t'
while zpty -r shell line; do
    [[ $line == *'<MATCH>'* ]] && print -r -- "${${line##*<MATCH>}%%$'\r'*}"
    [[ $line == *'<COMPLETED>'* ]] && break
done
zpty -d shell
