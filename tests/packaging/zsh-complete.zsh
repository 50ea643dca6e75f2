# zsh -f zsh-complete.zsh FPATH_DIR OUT_FILE 'handover ...'
#
# Completes the command line 'handover ...' in a real interactive zsh, as a user pressing Tab
# would: an inner `zsh -f -i` runs in a pseudo-terminal (zsh/zpty), loads compinit with
# FPATH_DIR (the directory holding _handover) first in $fpath, and gets the line typed into
# it followed by Tab. A compadd wrapper appends every match the completion system adds to
# OUT_FILE, one a line; a key bound after the Tab writes "<done>" there once the completion
# has run (Ctrl-T, rebound for this). Prints OUT_FILE's matches; exits 1 if the completion did not finish in 30 s.
zmodload zsh/zpty || exit 2
dir=$1 out=$2 line=$3
: >| $out
zpty inner 'TERM=dumb zsh -f -i'
zpty -w inner "fpath=(${(q)dir} \$fpath); autoload -U compinit; compinit -u -D"
# -O/-A/-D already collect matches into an array instead of adding them: leave those alone.
zpty -w inner 'compadd() { local -a m; if (( ${@[(I)-[OAD]]} == 0 )); then builtin compadd -O m "$@"; print -rl -- $m >> '${(q)out}'; fi; builtin compadd "$@"; }'
zpty -w inner 'handover-test-done() { print -- "<done>" >> '${(q)out}'; }; zle -N handover-test-done; bindkey -e; bindkey "^T" handover-test-done'
zpty -w -n inner "$line"$'\t\C-t'
integer i
for (( i = 0; i < 300; i++ )); do
  grep -qx '<done>' $out && break
  sleep 0.1
done
zpty -d inner
if ! grep -qx '<done>' $out; then
  print -u2 "zsh-complete.zsh: the completion of '$line' did not finish within 30 s"
  exit 1
fi
grep -vx '<done>' $out
exit 0
