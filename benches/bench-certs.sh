# Sourced by the TLS benchmarks (tls-side-by-side.sh, auth-side-by-side.sh).
#
# make_bench_certs DIR: a CA (ca.pem, ca.key), a server certificate for 127.0.0.1 (server.pem,
# server.key) and a client certificate with CN "client" (client.pem, client.key) in DIR, all
# P-256, valid two days, each usable for server and client authentication.
make_bench_certs() {
  (
    cd "$1"
    printf '[s]\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >ext.cnf
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
      -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
    for name in server client; do
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$name.key" \
        -out "$name.csr" -subj "/CN=$name" 2>/dev/null
      openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out "$name.pem" -days 2 -extfile ext.cnf -extensions s 2>/dev/null
    done
  )
}
