//! `[workers] user` and `group` resolved to the credentials the workers get.

use toml::Spanned;

use super::checks::*;
use super::source::*;
use super::{ConfigError, Credentials, LoadEnv};

/// `workers.user` and `workers.group` (names or numeric ids) resolved to the uid, gid and
/// supplementary groups the workers get: the user's own groups (getgrouplist) with `group`
/// or else the user's primary group as the gid. A master that is not root may only name
/// itself (then nothing is switched).
pub(super) fn resolve_credentials(
    user: Option<&Spanned<Scalar>>,
    group: Option<&Spanned<Scalar>>,
    src: &Source<'_>,
    env: &LoadEnv,
) -> Result<Option<Credentials>, ConfigError> {
    use nix::unistd::{Gid, Group, Uid, User};
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let text = |s: &Scalar| match s {
        Scalar::Str(s) => s.clone(),
        Scalar::Int(n) => n.to_string(),
    };
    let numeric = |s: &Scalar| -> Option<u32> {
        match s {
            Scalar::Int(n) => u32::try_from(*n).ok(),
            Scalar::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
            Scalar::Str(_) => None,
        }
    };
    let user_entry = match user {
        None => None,
        Some(u) => {
            let name = text(u.get_ref());
            let found = match numeric(u.get_ref()) {
                Some(id) => User::from_uid(Uid::from_raw(id)),
                None if name.is_empty() || name.contains('\0') => {
                    return Err(src.at(u.span(), "workers.user", "must be a user name or a numeric uid"))
                }
                None => User::from_name(&name),
            };
            match (found, numeric(u.get_ref())) {
                (Ok(Some(entry)), _) => Some((entry.uid.as_raw(), Some(entry))),
                // A numeric uid without a passwd entry is allowed (as systemd's User= does),
                // but then the group must be given.
                (Ok(None), Some(id)) => Some((id, None)),
                (Ok(None), None) => {
                    return Err(src.at(u.span(), "workers.user", format!("no such user: {name:?}")));
                }
                (Err(e), _) => {
                    return Err(src.at(u.span(), "workers.user", format!("looking up {name:?}: {e}")));
                }
            }
        }
    };
    let gid = match group {
        Some(g) => {
            let name = text(g.get_ref());
            let found = match numeric(g.get_ref()) {
                Some(id) => Group::from_gid(Gid::from_raw(id)).map(|e| e.map(|e| e.gid.as_raw()).or(Some(id))),
                None if name.is_empty() || name.contains('\0') => {
                    return Err(src.at(g.span(), "workers.group", "must be a group name or a numeric gid"))
                }
                None => Group::from_name(&name).map(|e| e.map(|e| e.gid.as_raw())),
            };
            match found {
                Ok(Some(gid)) => gid,
                Ok(None) => return Err(src.at(g.span(), "workers.group", format!("no such group: {name:?}"))),
                Err(e) => return Err(src.at(g.span(), "workers.group", format!("looking up {name:?}: {e}"))),
            }
        }
        None => match &user_entry {
            Some((_, Some(entry))) => entry.gid.as_raw(),
            Some((uid, None)) => {
                let span = user.map(|u| u.span());
                return Err(src.maybe_at(
                    span,
                    "workers.user",
                    format!("uid {uid} has no passwd entry, so no primary group: set workers.group too"),
                ));
            }
            None => env.ids.1,
        },
    };
    let uid = user_entry.as_ref().map_or(env.ids.0, |(uid, _)| *uid);
    // The supplementary groups: the user's (from the group database), with the gid; a user
    // without a passwd entry, or only `group` given, gets the gid alone.
    let groups = match user_entry.as_ref().and_then(|(_, e)| e.as_ref()) {
        Some(entry) => {
            let name = std::ffi::CString::new(entry.name.as_bytes()).map_err(|_| {
                src.maybe_at(user.map(|u| u.span()), "workers.user", "the user name has a NUL byte".into())
            })?;
            let mut list: Vec<u32> = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                .map_err(|e| {
                    src.maybe_at(user.map(|u| u.span()), "workers.user", format!("reading the user's groups: {e}"))
                })?
                .into_iter()
                .map(|g| g.as_raw())
                .collect();
            list.sort_unstable();
            list.dedup();
            list
        }
        None => vec![gid],
    };
    if !env.is_root {
        if (uid, gid) == env.ids {
            return Ok(None); // ourselves: nothing to switch
        }
        let (key, span) = match (user, group) {
            (Some(u), _) if uid != env.ids.0 => ("workers.user", u.span()),
            (_, Some(g)) => ("workers.group", g.span()),
            (Some(u), None) => ("workers.user", u.span()),
            (None, None) => return Ok(None),
        };
        return Err(src.at(
            span,
            key,
            format!(
                "handover runs as uid {} gid {}, not root: it cannot start workers as uid {uid} gid {gid}; \
                 run it as that user instead, or as root",
                env.ids.0, env.ids.1
            ),
        ));
    }
    Ok(Some(Credentials { uid, gid, groups }))
}
