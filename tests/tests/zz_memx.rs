// throwaway: serves 10k x 10 for a memory profile; not committed
use lb_tests::apiserver::ApiServer;
use serde_json::json;
#[test]
#[ignore]
fn serve_10k() {
    let api = ApiServer::start().unwrap();
    for i in 0..10_000u32 {
        let vip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + 10 + i);
        let name = format!("dummy-{i}");
        api.apply(json!({"apiVersion":"v1","kind":"Service","metadata":{"name":name,"namespace":"bench"},
            "spec":{"type":"ClusterIP","clusterIP":vip.to_string(),"ports":[{"port":80,"targetPort":8080,"protocol":"TCP"}],"selector":{"app":name}}})).unwrap();
        let eps: Vec<_> = (0..10u32).map(|j| json!({"addresses":[std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10,128,0,0)) + i*10+j).to_string()],"conditions":{"ready":true},"nodeName":"node-0"})).collect();
        api.apply(json!({"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":format!("{name}-abcde"),"namespace":"bench","labels":{"kubernetes.io/service-name":name}},
            "addressType":"IPv4","ports":[{"port":8080,"protocol":"TCP"}],"endpoints":eps})).unwrap();
    }
    api.kubeconfig(std::path::Path::new("/tmp/memx/kubeconfig")).unwrap();
    std::fs::write("/tmp/memx/ready", "").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(90));
}
