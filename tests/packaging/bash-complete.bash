# bash --norc --noprofile bash-complete.bash TREE 'handover ...'
#
# Completes the command line 'handover ...' as bash with bash-completion does when the user
# presses Tab: TREE is an unpacked package (TREE/usr/share/bash-completion/completions/handover,
# TREE/usr/bin/handover); bash-completion's loader finds the script through $XDG_DATA_DIRS, as
# it finds /usr/share/bash-completion/completions/handover once the package is installed,
# and the function `complete -p handover` names gets COMP_WORDS/COMP_CWORD/COMP_LINE/COMP_POINT.
# Prints the completions (COMPREPLY), one a line; exits 3 if no completion got registered.
set -u
tree=$1 line=$2
export XDG_DATA_DIRS=$tree/usr/share
PATH=$tree/usr/bin:$PATH
# shellcheck source=/dev/null
source /usr/share/bash-completion/bash_completion
# What bash-completion's `complete -D` hook runs on the first Tab on a command it has no
# completion for yet.
_completion_loader handover
spec=$(complete -p handover 2>/dev/null) || { echo "bash-complete.bash: no completion registered for handover" >&2; exit 3; }
fn=${spec##*-F }
fn=${fn%% *}
COMP_LINE=$line
COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<<"$COMP_LINE"
[[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
prev=''
((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}
"$fn" handover "${COMP_WORDS[COMP_CWORD]}" "$prev"
printf '%s\n' "${COMPREPLY[@]}"
