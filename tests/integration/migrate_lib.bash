# Helpers for the migration tests (sourced after lib.bash).

# start_receiver NAME [receive args...]: a `vmsnap receive` on a free loopback port whose
# console joins the source's console stream (so one hbwatch times the whole guest).
# Sets RX_PID, RX_PORT, RX_API, RX_ERR.
start_receiver() {
	local name=$1; shift
	RX_API=$WORK/$name.sock
	RX_ERR=$WORK/$name.err
	rm -f "$WORK/$name.port" "$WORK/$name.status"
	rm -f "$WORK/$name.pid"
	( "$VMSNAP" receive --listen 127.0.0.1:0 --port-file "$WORK/$name.port" --api "$RX_API" \
		--timeout 60 "$@" >"$WORK/con.fifo" 2>"$RX_ERR" </dev/null &
	  echo $! >"$WORK/$name.pid"
	  wait $!
	  echo "$?" >"$WORK/$name.status" ) &
	PIDS+=("$!")
	for _ in $(seq 100); do [ -s "$WORK/$name.port" ] && break; sleep 0.05; done
	RX_PID=$(cat "$WORK/$name.pid")
	PIDS+=("$RX_PID")
	RX_PORT=$(cat "$WORK/$name.port" 2>/dev/null)
}

# rx_status NAME: the receiver's exit status once it ended (waits up to 10 s).
rx_status() {
	for _ in $(seq 100); do [ -s "$WORK/$1.status" ] && break; sleep 0.1; done
	cat "$WORK/$1.status" 2>/dev/null || echo running
}

# make_certs DIR: a CA, and server/client certificates for localhost/127.0.0.1 signed by it,
# plus a second, unrelated CA with its own client certificate (the "wrong" one).
make_certs() {
	local d=$1
	mkdir -p "$d"
	(
		cd "$d" || exit 1
		for ca in ca other; do
			openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
				-keyout $ca.key -out $ca.pem -days 2 -subj "/CN=vmsnap test $ca" 2>/dev/null
		done
		printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
		for who in server:ca client:ca rogue:other; do
			local n=${who%%:*} ca=${who##*:}
			openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
				-keyout $n.key -out $n.csr -subj "/CN=$n" 2>/dev/null
			openssl x509 -req -in $n.csr -CA $ca.pem -CAkey $ca.key -CAcreateserial \
				-out $n.pem -days 2 -extfile san.ext 2>/dev/null
		done
	)
	[ -s "$d/server.pem" ] && [ -s "$d/client.pem" ] && [ -s "$d/rogue.pem" ]
}

# gap_ms: the largest heartbeat gap hbwatch saw since the last SIGUSR2.
gap_ms() {
	kill -USR1 "$WATCH_PID"; sleep 0.3
	json_field "$SUM" max_gap_ms 2>/dev/null || echo -1
}

# wait_source TIMEOUT: wait for the source vmsnap to end (the console watcher goes on, the
# destination still writes to it); sets VM_STATUS.
wait_source() {
	local i=0
	while kill -0 "$VM_PID" 2>/dev/null && [ $i -lt $(($1 * 10)) ]; do sleep 0.1; i=$((i + 1)); done
	if kill -0 "$VM_PID" 2>/dev/null; then VM_STATUS=running; return 1; fi
	for _ in $(seq 50); do [ -s "$WORK/vm.status" ] && break; sleep 0.1; done
	VM_STATUS=$(cat "$WORK/vm.status" 2>/dev/null || echo unknown)
}
