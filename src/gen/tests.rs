//! Generator tests with real openssl/keytool and certificates from scripts/certs.
