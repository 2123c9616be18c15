import json
S=lambda n:{"$ref":"#/components/schemas/"+n}
def obj(props, required=None, extra=False):
    o={"type":"object","properties":props,"required":required if required is not None else list(props),"additionalProperties":extra}
    return o
u64={"type":"integer","minimum":0}
i64={"type":"integer"}
nul=lambda t:dict(t,nullable=True)
schemas={
 "Error": obj({"error":{"type":"string"}}),
 "Deleted": obj({"deleted":{"type":"boolean","enum":[True]}}),
 "RouterCreate": obj({},[]),
 "SrtpKeys": obj({"profile":{"type":"string","enum":["AES_CM_128_HMAC_SHA1_80","AEAD_AES_128_GCM"]},
                  "recv_key":{"type":"string","description":"base64 of master key and salt the remote sends with (30 bytes for AES_CM_128_HMAC_SHA1_80, 28 for AEAD_AES_128_GCM)"},
                  "send_key":{"type":"string","description":"base64 of master key and salt tern sends with"}}),
 "TransportCreate": obj({"remote":{"type":"string","description":"IP:PORT of the peer; absent: learned from the first packet (after SRTP, when on)"},
                         "srtp":S("SrtpKeys")},[]),
 "Encoding": obj({"ssrc":nul({"type":"integer","minimum":0,"maximum":4294967295}),"rid":nul({"type":"string"})},[]),
 "ProducerCreate": obj({"transport":u64,"kind":{"type":"string","enum":["audio","video"]},
     "codec":{"type":"string","enum":["vp8","h264","opus","other"]},"clock_rate":{"type":"integer","minimum":1},
     "payload_types":{"type":"array","items":{"type":"integer","minimum":0,"maximum":127}},
     "encodings":{"type":"array","items":S("Encoding"),"description":"lowest spatial layer first"},
     "rid_extension_id":nul({"type":"integer","minimum":1,"maximum":14}),"mid_extension_id":nul({"type":"integer","minimum":1,"maximum":14}),
     "mid":nul({"type":"string"}),"key_frame_request":{"type":"string","enum":["pli","fir"]},
     "retransmit_capacity":{"type":"integer","minimum":0,"maximum":8192},"nack":{"type":"boolean"}},
     ["transport","kind","codec","clock_rate","payload_types","encodings"]),
 "PayloadTypeMap": obj({"producer":{"type":"integer","minimum":0,"maximum":127},"consumer":{"type":"integer","minimum":0,"maximum":127}}),
 "ConsumerCreate": obj({"producer":u64,"transport":u64,"ssrc":{"type":"integer","minimum":0,"maximum":4294967295},
     "payload_types":{"type":"array","items":S("PayloadTypeMap")},
     "preferred_spatial_layer":nul({"type":"integer","minimum":0,"maximum":7}),"preferred_temporal_layer":nul({"type":"integer","minimum":0,"maximum":7}),
     "paused":{"type":"boolean"}},["producer","transport","ssrc"]),
 "ConsumerUpdate": obj({"paused":{"type":"boolean"},"preferred_spatial_layer":nul({"type":"integer","minimum":0,"maximum":7}),
     "preferred_temporal_layer":nul({"type":"integer","minimum":0,"maximum":7})},[]),
 "TransportStats": obj({k:u64 for k in ["packets_in","bytes_in","packets_out","bytes_out","rtcp_in","dropped","srtp_auth_failures","srtp_replays"]}),
 "Transport": obj({"id":u64,"router":u64,"local":{"type":"string"},"remote":nul({"type":"string"}),"remote_fixed":{"type":"boolean"},
     "srtp":nul({"type":"string","enum":["AES_CM_128_HMAC_SHA1_80","AEAD_AES_128_GCM"]}),"stats":S("TransportStats")}),
 "EncodingStats": obj({"ssrc":nul({"type":"integer","minimum":0}),"rid":nul({"type":"string"}),"packets":u64,"bytes":u64,"lost":i64,
     "jitter":u64,"key_frames":u64,"nacks_sent":u64,"recovered":u64}),
 "Producer": obj({"id":u64,"router":u64,"transport":u64,"kind":{"type":"string","enum":["audio","video"]},
     "codec":{"type":"string","enum":["vp8","h264","opus","other"]},"clock_rate":u64,
     "payload_types":{"type":"array","items":{"type":"integer","minimum":0,"maximum":127}},"encodings":{"type":"array","items":S("EncodingStats")}}),
 "ConsumerStats": obj(dict({k:u64 for k in ["packets","bytes","retransmitted","nacks_received","nack_misses","plis_received","firs_received",
     "dropped_temporal","skipped_layer","layer_switches","fraction_lost","jitter"]},
     cumulative_lost=i64, rtt_ms=nul({"type":"number","minimum":0}), spatial_layer=nul(u64), temporal_layer=nul(u64))),
 "Consumer": obj({"id":u64,"router":u64,"producer":u64,"transport":u64,"ssrc":u64,"paused":{"type":"boolean"},
     "preferred_spatial_layer":nul(u64),"preferred_temporal_layer":nul(u64),"stats":S("ConsumerStats")}),
 "RouterStats": obj(dict({k:u64 for k in ["rtp_received","rtp_forwarded","rtcp_received","retransmitted","nack_misses","key_frame_requests_sent",
     "upstream_nacks_sent","receiver_reports_sent","sender_reports_forwarded"]},
     drops={"type":"object","additionalProperties":u64,"properties":{},"required":[]})),
 "Router": obj({"id":u64,"worker":u64,"transports":{"type":"array","items":S("Transport")},"producers":{"type":"array","items":S("Producer")},
     "consumers":{"type":"array","items":S("Consumer")},"stats":S("RouterStats")}),
 "RouterList": obj({"routers":{"type":"array","items":S("Router")}}),
 "TransportList": obj({"transports":{"type":"array","items":S("Transport")}}),
 "ProducerList": obj({"producers":{"type":"array","items":S("Producer")}}),
 "ConsumerList": obj({"consumers":{"type":"array","items":S("Consumer")}}),
}
def resp(code, schema, desc):
    return {str(code):{"description":desc,"content":{"application/json":{"schema":S(schema)}}}}
def errs(*codes):
    d={}
    for c in codes:
        d.update(resp(c,"Error",{400:"bad body",401:"missing or wrong bearer token",403:"no admin-token configured",404:"no such resource (or the SFU is off)",405:"method not allowed",409:"refused by the router (SSRC in use, unmapped payload type)",503:"no free port, or the worker is gone",504:"the owning worker did not answer in time"}[c]))
    return d
common=(401,403,404,405,504)
def op(summary, ok, okschema, body=None, extra=()):
    o={"summary":summary,"responses":{}}
    o["responses"].update(resp(ok,okschema,"done"))
    o["responses"].update(errs(*sorted(set(common+tuple(extra)))))
    if body: o["requestBody"]={"required":body!="RouterCreate","content":{"application/json":{"schema":S(body)}}}
    return o
rid={"name":"router","in":"path","required":True,"schema":{"type":"integer","minimum":1}}
def pid(n): return {"name":n,"in":"path","required":True,"schema":{"type":"integer","minimum":0}}
paths={
 "/sfu/routers":{"get":op("List routers with everything in them",200,"RouterList"),
                 "post":op("Create a router on the least loaded worker",201,"Router","RouterCreate",(400,503))},
 "/sfu/routers/{router}":{"parameters":[rid],"get":op("One router",200,"Router"),"delete":op("Delete a router and everything in it",200,"Deleted")},
 "/sfu/routers/{router}/transports":{"parameters":[rid],"get":op("The router's transports",200,"TransportList"),
     "post":op("Open a transport (a UDP port from sfu-ports, rtcp-mux)",201,"Transport","TransportCreate",(400,503))},
 "/sfu/routers/{router}/transports/{transport}":{"parameters":[rid,pid("transport")],"get":op("One transport",200,"Transport"),
     "delete":op("Close a transport with its producers and consumers",200,"Deleted")},
 "/sfu/routers/{router}/producers":{"parameters":[rid],"get":op("The router's producers",200,"ProducerList"),
     "post":op("Add a producer",201,"Producer","ProducerCreate",(400,409))},
 "/sfu/routers/{router}/producers/{producer}":{"parameters":[rid,pid("producer")],"get":op("One producer with per-encoding stats",200,"Producer"),
     "delete":op("Remove a producer and its consumers",200,"Deleted")},
 "/sfu/routers/{router}/consumers":{"parameters":[rid],"get":op("The router's consumers",200,"ConsumerList"),
     "post":op("Add a consumer",201,"Consumer","ConsumerCreate",(400,409))},
 "/sfu/routers/{router}/consumers/{consumer}":{"parameters":[rid,pid("consumer")],"get":op("One consumer with stats",200,"Consumer"),
     "patch":op("Pause, resume or change preferred layers",200,"Consumer","ConsumerUpdate",(400,409)),
     "delete":op("Remove a consumer",200,"Deleted")},
}
doc={"openapi":"3.0.3","info":{"title":"tern SFU control API","version":"0.1.0",
  "description":"Served on tern's admin endpoint when sfu = true. Every call needs `Authorization: Bearer <admin-token>`. Errors are `{\"error\": \"...\"}` with a 4xx/5xx status. IDs are integers (routers start at 1). A path not listed here is 404 and a method not listed is 405, both with the Error shape."},
 "security":[{"bearer":[]}],
 "paths":paths,"components":{"securitySchemes":{"bearer":{"type":"http","scheme":"bearer"}},"schemas":schemas}}
print(json.dumps(doc,indent=2))
