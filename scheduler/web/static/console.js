// kiln web view: follows a live console and filters the shown lines.
// The page works without it; the server renders every line (escaped,
// coloured by classes), and this script only appends what the server sends.
(function () {
  "use strict";
  var pre = document.getElementById("console");
  if (!pre) return;

  // #L123 outside the shown window: ask the server for the window around it.
  var m = /^#L(\d+)$/.exec(location.hash);
  if (m && !document.getElementById("L" + m[1])) {
    location.replace(location.pathname + "?attempt=" + pre.dataset.attempt + "&line=" + m[1] + location.hash);
    return;
  }

  // Filter: hide shown lines that do not contain the search text as you type
  // (the form's submit searches the whole console on the server).
  var search = document.getElementById("console-search");
  if (search) {
    search.addEventListener("input", function () {
      var q = search.value.toLowerCase();
      var lines = pre.querySelectorAll(".l");
      for (var i = 0; i < lines.length; i++) {
        lines[i].classList.toggle("hide", q !== "" && lines[i].textContent.toLowerCase().indexOf(q) < 0);
      }
    });
  }

  if (pre.dataset.live !== "true") return;
  var follow = document.getElementById("follow");
  var status = document.getElementById("console-status");
  var d = pre.dataset;
  function atBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
  }
  function step() {
    var url = "/runs/" + encodeURIComponent(d.run) + "/follow?attempt=" + d.attempt + "&offset=" + d.offset +
      "&have=" + d.have + "&line=" + d.line + "&style=" + encodeURIComponent(d.style);
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } }).then(function (resp) {
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      return resp.json();
    }).then(function (a) {
      var stick = follow && follow.checked && atBottom();
      if (a.html) {
        var old = pre.querySelector(".l.partial");
        if (old) old.remove();
        pre.insertAdjacentHTML("beforeend", a.html); // rendered and escaped by the server
      }
      d.offset = a.offset; d.have = a.have; d.line = a.line; d.style = a.style;
      var st = document.getElementById("run-state");
      if (st && st.textContent !== a.state) { st.textContent = a.state; st.className = "state " + a.state; }
      if (stick) window.scrollTo(0, document.body.scrollHeight);
      if (a.live) {
        status.textContent = "Following the live console.";
        setTimeout(step, 0);
      } else {
        status.innerHTML = "";
        status.appendChild(document.createTextNode("The run ended (" + a.state + "). "));
        var link = document.createElement("a");
        link.href = location.pathname;
        link.textContent = "Reload for its artifacts and checks";
        status.appendChild(link);
        if (follow) follow.disabled = true;
      }
    }).catch(function (e) {
      status.textContent = "Follow interrupted (" + e.message + "); retrying.";
      setTimeout(step, 3000);
    });
  }
  status.textContent = "Following the live console.";
  step();
})();
