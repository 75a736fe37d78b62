// k6 script for every HTTP phase of `make bench`; the Python side passes one phase as JSON in BENCH_SPEC.
//
// executor "rate": constant-arrival-rate (a fixed offered load, open model: arrivals do not wait for answers,
// so a slow server shows up as latency and dropped iterations); executor "vus": constant-vus (closed model,
// N virtual users back to back: the saturation throughput). The summary is written as JSON by handleSummary.
import http from "k6/http";
import exec from "k6/execution";

const spec = JSON.parse(__ENV.BENCH_SPEC);
const ids = spec.ids_file ? JSON.parse(open(spec.ids_file)) : [];

const scenario =
  spec.executor === "rate"
    ? {
        executor: "constant-arrival-rate",
        rate: spec.rate,
        timeUnit: "1s",
        duration: `${spec.duration_s}s`,
        preAllocatedVUs: spec.max_vus,
        maxVUs: spec.max_vus,
        gracefulStop: "5s",
      }
    : {
        executor: "constant-vus",
        vus: spec.vus,
        duration: `${spec.duration_s}s`,
        gracefulStop: "5s",
      };

export const options = {
  scenarios: { phase: scenario },
  discardResponseBodies: true,
  summaryTrendStats: ["avg", "min", "med", "max", "p(50)", "p(95)", "p(99)"],
  // Declaring the threshold makes k6 compute the latency of expected (successful) responses on its own.
  thresholds: { "http_req_duration{expected_response:true}": ["max>=0"] },
  insecureSkipTLSVerify: true,
  noCookiesReset: true,
};

http.setResponseCallback(http.expectedStatuses(...spec.expect_status));

const baseHeaders = Object.assign({ "content-type": "application/json" }, spec.headers || {});

export default function () {
  const n = exec.scenario.iterationInTest;
  const unique = `${spec.tag}-${n}`;
  let path = spec.path;
  if (ids.length > 0) {
    const index = spec.ids_unique ? (spec.ids_offset + n) % ids.length : Math.floor(Math.random() * ids.length);
    path = path.replace("{id}", ids[index]);
  }
  const headers = Object.assign({}, baseHeaders);
  if (spec.idempotency) {
    headers["Idempotency-Key"] = `bench-${unique}`;
  }
  const body = spec.body === null ? null : spec.body.split("__UNIQUE__").join(unique);
  http.request(spec.method, `${spec.base_url}${path}`, body, { headers: headers, timeout: "30s" });
}

export function handleSummary(data) {
  return { [spec.summary_path]: JSON.stringify(data) };
}
