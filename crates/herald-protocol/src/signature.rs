//! Every HMAC the protocol uses (protocol doc 1.8, 1.17, 1.18): channel authorization, user
//! sign-in, HTTP API request signing and webhook signing.
//!
//! Invariant: signatures are always checked over the exact bytes received and compared in
//! constant time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, message: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(message);
    mac
}

/// Lowercase hex HMAC-SHA256 of `message` keyed with `secret`.
pub fn sign(secret: &str, message: &[u8]) -> String {
    hex::encode(mac(secret, message).finalize().into_bytes())
}

/// Constant-time check of a hex signature. Malformed hex is simply a wrong signature.
pub fn verify(secret: &str, message: &[u8], signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex) else {
        return false;
    };
    mac(secret, message).verify_slice(&signature).is_ok()
}

/// Checks a subscription or sign-in `auth` value `"<app_key>:<hex>"`: the key prefix must be the
/// app's key and the signature must cover `message`.
pub fn verify_auth(app_key: &str, secret: &str, message: &str, auth: &str) -> bool {
    let Some((key, signature)) = auth.split_once(':') else {
        return false;
    };
    key == app_key && verify(secret, message.as_bytes(), signature)
}

/// The string a private/encrypted (`channel_data` = None) or presence channel signature covers.
pub fn channel_auth_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string a user sign-in signature covers.
pub fn signin_message(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Lowercase hex MD5 of a request body (`body_md5`).
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The HTTP API string to sign: method, path, and every query parameter except `auth_signature`,
/// keys lowercased, sorted, joined as `k=v` with `&`, not URL-escaped.
pub fn api_string_to_sign<'a>(
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .into_iter()
        .filter(|(k, _)| *k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        query.join("&")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn published_channel_vectors() {
        assert_eq!(
            sign(
                SECRET,
                channel_auth_message("1234.1234", "private-foobar", None).as_bytes()
            ),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert_eq!(
            sign(
                SECRET,
                signin_message("1234.1234", r#"{"id":"12345"}"#).as_bytes()
            ),
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
        let presence = channel_auth_message(
            "1234.1234",
            "presence-foobar",
            Some(r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#),
        );
        let auth =
            format!("{KEY}:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80");
        assert!(verify_auth(KEY, SECRET, &presence, &auth));
        assert!(!verify_auth("other-key", SECRET, &presence, &auth));
        assert!(!verify_auth(KEY, SECRET, &presence, "nocolon"));
        assert!(!verify_auth(KEY, SECRET, &presence, &format!("{KEY}:zz")));
    }

    #[test]
    fn published_http_api_vector() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = body_md5(body.as_bytes());
        assert_eq!(md5, "ec365a775a4cd0599faeb73354201b6f");
        let string = api_string_to_sign(
            "POST",
            "/apps/3/events",
            [
                ("auth_version", "1.0"),
                ("auth_key", KEY),
                ("auth_timestamp", "1353088179"),
                ("body_md5", md5.as_str()),
                ("auth_signature", "ignored"),
            ],
        );
        assert_eq!(
            string,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            sign(SECRET, string.as_bytes()),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
